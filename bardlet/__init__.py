"""bardlet: train your own small GPT chatbot from scratch."""
