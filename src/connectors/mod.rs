//! Connectors to real systems, each behind its own cargo feature.
//!
//! | feature    | module       | what it provides |
//! |------------|--------------|------------------|
//! | `postgres` | `postgres`   | keyset-paginated table source, upsert, counter and transactional sinks, checkpoint store, Lambda serving view |
//! | `redis`    | `redis`      | Streams source (consumer groups) and sink, counter sink, checkpoint store, Lambda speed store |
//! | `nats`     | `nats`       | JetStream durable pull-consumer source, de-duplicating publish sink |
//! | `kafka`    | `kafka`      | consumer source (offsets committed after checkpoints), idempotent producer sink |
//! | `sqlite`   | `sqlite`     | embedded checkpoint store |

#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "sqlite")]
pub mod sqlite;
