"""Input preparers: a user's input (a photo, a clip, a sentence) -> the base graph's feed.

Shared by both sides: the device prepares inputs with them, and the converter calibrates
int8 bases on exactly the inputs the device will feed.
"""
