"""Plug-ins that run tokencredit recipes inside existing engines (`trl`, `verl`), and what they share.

Each plug-in asks the recipe what it needs (`recipe.needs()`) and supplies it from the engine's own tensors;
what an engine cannot supply is refused when the plug-in is built, with one message naming the need.
"""
