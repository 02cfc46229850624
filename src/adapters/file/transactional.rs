//! Transactional file sink (in progress).
