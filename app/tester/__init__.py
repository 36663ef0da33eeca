"""The score tester pages: a form from the deployed model's signature, scored through the gateway
with the signed-in user's own token (the scoring service itself is app/serving)."""
