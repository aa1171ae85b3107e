"""The `openai` runtime: a deployment served behind an OpenAI-compatible API (vLLM,
llama.cpp's server, transformers serve): the backend, each server's dialect and neutral
sampling (dialects), HTTP with retries (http), parsing replies (replies), teacher-forced
scores from prompt log-probs (scoring) and token re-segmentation (tokens)."""
