//! The overlay's pure core: peers from the cluster view, the plan, the control protocol's text.
