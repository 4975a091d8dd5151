"""Identity: passwords, API client credentials, bearer tokens and join tokens.

- `passwords`: argon2id hashes of passwords and client secrets (earlier scrypt hashes verify and
  are replaced at the next successful login).
- `throttle`: failed logins counted per client address and per account (`auth.login_rate`).
- `accounts`: users, API clients and the `Principal` a request acts as (a client acts as its
  owner). No default credentials: an empty database has no users.
- `tokens`: bearer tokens (`cfb_…`), 256-bit random values stored as SHA-256, checked with one
  indexed SELECT per request; revoking one (or its client, or disabling its user) takes effect
  on the next request.
- `join_tokens`: join tokens (`cfj_…`) that only let a GPU host add itself as a node; one
  function says whether a join token is active, expired or revoked (`join_token_state`).

The rows live in the job store (`comfyfleet.store.users`); this package holds the crypto and
the rules.
"""

from comfyfleet.auth.accounts import (
    CLIENT_SECRET_BYTES,
    Principal,
    authenticate_client,
    authenticate_user,
    check_login,
    create_client,
    create_user,
    disable_user,
    require_user,
    revoke_client,
    set_password,
)
from comfyfleet.auth.join_tokens import (
    DEFAULT_JOIN_TTL_MINUTES,
    JoinRefused,
    JoinTokenState,
    authenticate_join_token,
    check_join_token,
    issue_join_token,
    join_token_state,
    revoke_join_token,
    use_join_token,
)
from comfyfleet.auth.passwords import (
    MAX_PASSWORD_LENGTH,
    MIN_PASSWORD_LENGTH,
    generate_password,
    hash_password,
    needs_rehash,
    run_hashing,
    validate_password,
    verify_password,
)
from comfyfleet.auth.throttle import LoginThrottle
from comfyfleet.auth.tokens import (
    BEARER_PREFIX,
    JOIN_PREFIX,
    TOKEN_BYTES,
    IssuedToken,
    authenticate_token,
    issue_token,
    new_token,
    revoke_token,
    token_digest,
)

__all__ = [
    "BEARER_PREFIX",
    "CLIENT_SECRET_BYTES",
    "DEFAULT_JOIN_TTL_MINUTES",
    "JOIN_PREFIX",
    "MAX_PASSWORD_LENGTH",
    "MIN_PASSWORD_LENGTH",
    "TOKEN_BYTES",
    "IssuedToken",
    "JoinRefused",
    "JoinTokenState",
    "LoginThrottle",
    "Principal",
    "authenticate_client",
    "authenticate_join_token",
    "authenticate_token",
    "authenticate_user",
    "check_join_token",
    "check_login",
    "create_client",
    "create_user",
    "disable_user",
    "generate_password",
    "hash_password",
    "issue_join_token",
    "issue_token",
    "join_token_state",
    "needs_rehash",
    "new_token",
    "require_user",
    "revoke_client",
    "revoke_join_token",
    "revoke_token",
    "run_hashing",
    "set_password",
    "token_digest",
    "use_join_token",
    "validate_password",
    "verify_password",
]
