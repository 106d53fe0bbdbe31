"""dockmesh.yaml: load with positions, validate, turn into desired state, diff into a plan."""
