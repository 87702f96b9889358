"""Mistral wire formats as pure functions: request bodies -> estimates, responses -> usage."""
