//! Kappa architecture (in progress).
