"""Inbound dialects: each turns a client request into the hub request and hub output
back into its own answers and events.

The hub is a Chat Completions body plus documented extension fields
(`reasoning_content`, `reasoning_signature`, provider state inside tool-call ids);
Chat is the identity dialect and needs no package.  `carry` is the one codec every
dialect uses to hand provider state to its clients and take it back; `responses/`
serves the OpenAI Responses API.  Everything here is sans-IO: the HTTP pipeline
does the reading, writing and storing.
"""
