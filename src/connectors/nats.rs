//! nats connector (in progress).
