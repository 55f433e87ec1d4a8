//! suture-klp
