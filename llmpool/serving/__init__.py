"""Serving: one path from a parsed request body to its answer, for every API.

- `pipeline.Pipeline` is the path: `submit` (the API maps the body to a
  `GenerationRequest`, the pool admits it as a `Job`), then `answer` (wait, JSON) or
  `stream` (SSE text), watching the client's socket and cancelling a job nobody waits for.
- `api.Api` is what an API is to the pipeline: request to job, event to bytes, final,
  error. One module per API: `responses_api` (POST /v1/responses, the pool's own and
  OpenAI's Responses), `chat_api` (Chat Completions), `completions_api` (legacy
  Completions).
- Nothing here imports Flask: `blueprints` parses the body with its schema, hands it here
  and writes what comes back.
"""
