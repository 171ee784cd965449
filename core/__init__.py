"""The bottom layer: what methods, tasks and the app stand on (errors, timing, files, registries, option
schemas, metric declarations, model presets and loading). It imports nothing from `bench`, `methods` or `tasks`."""
