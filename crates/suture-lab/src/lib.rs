//! suture-lab
