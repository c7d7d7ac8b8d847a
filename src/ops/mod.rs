//! Whole-filesystem jobs built on the layers below.
