"""decodebench: measure fast LLM decoding methods the same honest way."""
