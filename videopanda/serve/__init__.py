"""Using a trained model: the model-folder reader, `videopanda infer`, `chat` and `demo`."""
