"""The recipes that ship with dualtrain. Each module imports Keras: load one only after the backend
is chosen (see `dualtrain.engines.select_backend`)."""
