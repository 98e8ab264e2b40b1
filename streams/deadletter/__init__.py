"""Dead letters: the policy for bad records (``policy``) and ``consent-stream
dead-letters`` (``command``)."""
