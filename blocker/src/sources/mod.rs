//! Files named by distribution packages, Flatpak apps and snaps.
