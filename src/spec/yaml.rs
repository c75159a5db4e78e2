//! A YAML tree that remembers where each node was written (line and column).
