//! suture-host
