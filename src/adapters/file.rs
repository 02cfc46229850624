//! File sources and sinks (NDJSON, CSV).
