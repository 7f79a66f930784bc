"""The serving layer: what happens to a generation request between the API and the engine
(limits, admission, cancellation, usage records, metrics). `GenerationService` owns it."""
