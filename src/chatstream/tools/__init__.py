"""Tools the model may call during a run."""

from chatstream.tools.registry import Tool, ToolError, ToolRegistry, ToolSet, tool

__all__ = ["Tool", "ToolError", "ToolRegistry", "ToolSet", "tool"]
