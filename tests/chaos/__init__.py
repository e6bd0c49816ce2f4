"""The fault suite (`make chaos`): scenarios, and the instruments that count their outcome."""
