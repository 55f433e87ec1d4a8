//! suture-elf
