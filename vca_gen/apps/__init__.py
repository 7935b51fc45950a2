"""Applications that use every layer: the demo pipeline and its report."""
