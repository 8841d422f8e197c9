//! Differential tests of the shapes (to be written).
