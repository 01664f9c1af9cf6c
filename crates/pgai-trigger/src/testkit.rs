//! Test support: one shared embedded cluster per test process, one fresh database per test.
