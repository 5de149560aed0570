//! The compute backend interface (in progress).
