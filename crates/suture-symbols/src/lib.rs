//! suture-symbols
