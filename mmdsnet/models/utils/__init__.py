"""Helpers shared by the models: argument checks (``validation``) and norm layers (``norm``)."""
