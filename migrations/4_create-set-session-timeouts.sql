-- Behind a transaction pooler (DATABASE_POOLER=transaction) the service's
-- sessions cannot ask for their timeouts at connect: the migrate step makes
-- them its role's defaults in this database with this function
-- (src/db/pooler.ts). ALTER ROLE takes no parameters, so the statement is
-- built here, with format() quoting the role name and the value.
CREATE FUNCTION users_service_set_session_timeouts (role_name text, timeout text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE format('ALTER ROLE %I IN DATABASE %I SET statement_timeout = %L', role_name, current_database(), timeout);
  EXECUTE format('ALTER ROLE %I IN DATABASE %I SET idle_in_transaction_session_timeout = %L', role_name, current_database(), timeout);
END
$$;
