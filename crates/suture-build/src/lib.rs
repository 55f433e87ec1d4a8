//! suture-build
