"""Tools the gateway runs itself inside one response (the agentic loop), beside the pipeline.

`loop.ToolLoop` drives the samples; each hosted tool type is a small module: `mcp_request` reads the
`mcp` tool of a request, `egress` decides which servers may be called (and pins their addresses),
`mcp_client` talks to them, over sessions `mcp_pool` keeps open.
"""
