"""Reinforcement-learning objectives for training the memory agent (multi-conversation GRPO)."""
