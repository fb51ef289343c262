"""The OpenAPI document of the gateway's public API, built from the same pydantic models that
parse requests, so the document cannot drift from what the server accepts."""

from __future__ import annotations

from gateway.http.openai_api import ChatCompletionRequest, CompletionRequest

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["message", "type"], "properties": {
        "message": {"type": "string"}, "type": {"type": "string"},
        "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}},
}
ERRORS = {str(code): {"description": text, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
          for code, text in [(400, "Invalid request"), (401, "Missing or invalid API key"), (403, "Not allowed"),
                             (404, "Unknown model"), (413, "Body too large"), (429, "Budget or rate limit"),
                             (502, "Backend failed"), (503, "Backend unavailable")]}


def _body(schema_name: str) -> dict:
    return {"required": True, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}}}


def _ok(description: str, stream: bool = True) -> dict:
    content = {"application/json": {"schema": {"type": "object"}}}
    if stream:
        content["text/event-stream"] = {"schema": {"type": "string"}}
    return {"200": {"description": description, "content": content}, **ERRORS}


def openapi_document(version: str = "0.1.0") -> dict:
    schemas = {"Error": ERROR}
    for model in (ChatCompletionRequest, CompletionRequest):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    secured = [{"bearer": []}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "muxgate", "version": version,
                 "description": "One OpenAI-compatible endpoint in front of many models."},
        "components": {"schemas": schemas, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": {
            "/v1/chat/completions": {"post": {"operationId": "createChatCompletion", "security": secured,
                                              "requestBody": _body("ChatCompletionRequest"),
                                              "responses": _ok("A chat completion, or its SSE stream")}},
            "/v1/completions": {"post": {"operationId": "createCompletion", "security": secured,
                                         "requestBody": _body("CompletionRequest"),
                                         "responses": _ok("A text completion, or its SSE stream")}},
            "/v1/models": {"get": {"operationId": "listModels", "security": secured,
                                   "responses": _ok("The models", stream=False)}},
            "/healthz": {"get": {"operationId": "health", "responses": {"200": {"description": "Alive"}}}},
        },
    }
