//! Content hashing of executable files under scan roots, with a persistent cache.
