//! suture-kernel
