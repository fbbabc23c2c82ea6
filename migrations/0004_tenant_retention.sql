-- Tenants created through the API get what config.toml tenants have: their own history
-- retention (days; NULL keeps history until erased). The retention job reads it each run.
ALTER TABLE tenants
    ADD COLUMN retention_days integer CHECK (retention_days BETWEEN 1 AND 36500);
