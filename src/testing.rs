//! Helpers for testing transforms and pipelines.
