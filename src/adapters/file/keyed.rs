//! Idempotent keyed file sink (in progress).
