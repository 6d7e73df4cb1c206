-- The application the seed report describes, small: its seven critical tables
-- with the report's row counts (65 rows), 23 RLS policies, the Priority 1
-- indexes, functions and tables, and audit_logs. pgbv's demo and tests start
-- from this healthy database and plant faults in it.

CREATE TABLE organizations (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_organizations_created_at ON organizations (created_at);

CREATE TABLE profiles (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id bigint NOT NULL REFERENCES organizations (id),
    email text NOT NULL,
    role text NOT NULL DEFAULT 'member' CHECK (role IN ('owner', 'admin', 'member'))
);

CREATE TABLE agents (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id bigint NOT NULL REFERENCES organizations (id),
    name text NOT NULL,
    active boolean NOT NULL DEFAULT true
);
CREATE INDEX idx_agents_organization ON agents (organization_id);

CREATE TABLE contacts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id bigint NOT NULL REFERENCES organizations (id),
    full_name text NOT NULL,
    phone text
);
CREATE INDEX idx_contacts_organization ON contacts (organization_id);

CREATE TABLE appointments (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id bigint NOT NULL REFERENCES organizations (id),
    agent_id bigint NOT NULL REFERENCES agents (id),
    contact_id bigint NOT NULL REFERENCES contacts (id),
    starts_at timestamptz NOT NULL,
    ends_at timestamptz NOT NULL,
    status text NOT NULL DEFAULT 'booked',
    CONSTRAINT appointments_time_order CHECK (ends_at > starts_at)
);
-- The Priority 1 indexes that back book_appointment_with_lock.
CREATE INDEX idx_appointments_scheduling_lookup ON appointments (organization_id, agent_id, starts_at);
CREATE INDEX idx_appointments_time_range ON appointments (starts_at, ends_at);

CREATE TABLE call_logs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id bigint NOT NULL REFERENCES organizations (id),
    contact_id bigint REFERENCES contacts (id),
    started_at timestamptz NOT NULL DEFAULT now(),
    duration_seconds integer NOT NULL DEFAULT 0 CHECK (duration_seconds >= 0)
);
CREATE INDEX idx_call_logs_organization ON call_logs (organization_id, started_at);

CREATE TABLE knowledge_base_chunks (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id bigint NOT NULL REFERENCES organizations (id),
    content text NOT NULL
);

CREATE TABLE webhook_delivery_log (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivered_at timestamptz NOT NULL DEFAULT now(),
    payload jsonb
);
CREATE INDEX idx_webhook_delivery_log_delivered_at ON webhook_delivery_log (delivered_at);

CREATE TABLE audit_logs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id bigint REFERENCES organizations (id),
    action text NOT NULL,
    at timestamptz NOT NULL DEFAULT now(),
    detail text
);

CREATE FUNCTION book_appointment_with_lock(p_agent bigint, p_contact bigint, p_start timestamptz, p_end timestamptz)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_org bigint;
    v_id bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(p_agent);
    SELECT organization_id INTO v_org FROM agents WHERE id = p_agent;
    IF EXISTS (SELECT 1 FROM appointments
                WHERE agent_id = p_agent AND starts_at < p_end AND ends_at > p_start) THEN
        RAISE EXCEPTION 'agent % is already booked', p_agent;
    END IF;
    INSERT INTO appointments (organization_id, agent_id, contact_id, starts_at, ends_at)
    VALUES (v_org, p_agent, p_contact, p_start, p_end) RETURNING id INTO v_id;
    RETURN v_id;
END $$;

CREATE FUNCTION cleanup_old_webhook_logs(retention_days integer DEFAULT 30)
RETURNS integer LANGUAGE sql AS $$
    WITH deleted AS (
        DELETE FROM webhook_delivery_log WHERE delivered_at < now() - make_interval(days => retention_days)
        RETURNING 1
    )
    SELECT count(*)::integer FROM deleted
$$;

-- Rows: the seed report's counts (1, 17, 2, 23, 10, 4, 8 = 65).
INSERT INTO organizations (name) VALUES ('Acme Clinic');
INSERT INTO profiles (organization_id, email, role)
    SELECT 1, 'user' || g || '@acme.example', CASE WHEN g = 1 THEN 'owner' ELSE 'member' END
      FROM generate_series(1, 17) AS g;
INSERT INTO agents (organization_id, name) VALUES (1, 'Front desk'), (1, 'Night line');
INSERT INTO contacts (organization_id, full_name, phone)
    SELECT 1, 'Contact ' || g, '+1555000' || lpad(g::text, 4, '0') FROM generate_series(1, 10) AS g;
INSERT INTO appointments (organization_id, agent_id, contact_id, starts_at, ends_at)
    SELECT 1, 1 + g % 2, 1 + g % 10,
           timestamptz '2026-01-05 09:00+00' + g * interval '1 hour',
           timestamptz '2026-01-05 09:30+00' + g * interval '1 hour'
      FROM generate_series(1, 23) AS g;
INSERT INTO call_logs (organization_id, contact_id, duration_seconds)
    SELECT 1, g, 60 * g FROM generate_series(1, 4) AS g;
INSERT INTO knowledge_base_chunks (organization_id, content)
    SELECT 1, 'Opening hours, part ' || g FROM generate_series(1, 8) AS g;
INSERT INTO webhook_delivery_log (payload) SELECT jsonb_build_object('n', g) FROM generate_series(1, 5) AS g;
-- Enough history to give the database the report's size class (above its 10 MB floor).
INSERT INTO audit_logs (organization_id, action, detail)
    SELECT 1, 'login', repeat(md5(g::text), 4) FROM generate_series(1, 40000) AS g;

-- Row-level security: 23 policies (3, 1, 4, 5, 5, 3, 2), as in the report.
ALTER TABLE organizations ENABLE ROW LEVEL SECURITY;
ALTER TABLE profiles ENABLE ROW LEVEL SECURITY;
ALTER TABLE agents ENABLE ROW LEVEL SECURITY;
ALTER TABLE appointments ENABLE ROW LEVEL SECURITY;
ALTER TABLE contacts ENABLE ROW LEVEL SECURITY;
ALTER TABLE call_logs ENABLE ROW LEVEL SECURITY;
ALTER TABLE knowledge_base_chunks ENABLE ROW LEVEL SECURITY;

CREATE POLICY organizations_select ON organizations FOR SELECT USING (true);
CREATE POLICY organizations_update ON organizations FOR UPDATE USING (true);
CREATE POLICY organizations_insert ON organizations FOR INSERT WITH CHECK (true);
CREATE POLICY profiles_own ON profiles USING (true);
CREATE POLICY agents_select ON agents FOR SELECT USING (true);
CREATE POLICY agents_insert ON agents FOR INSERT WITH CHECK (true);
CREATE POLICY agents_update ON agents FOR UPDATE USING (true);
CREATE POLICY agents_delete ON agents FOR DELETE USING (true);
CREATE POLICY appointments_select ON appointments FOR SELECT USING (true);
CREATE POLICY appointments_insert ON appointments FOR INSERT WITH CHECK (true);
CREATE POLICY appointments_update ON appointments FOR UPDATE USING (true);
CREATE POLICY appointments_delete ON appointments FOR DELETE USING (true);
CREATE POLICY appointments_service ON appointments USING (true);
CREATE POLICY contacts_select ON contacts FOR SELECT USING (true);
CREATE POLICY contacts_insert ON contacts FOR INSERT WITH CHECK (true);
CREATE POLICY contacts_update ON contacts FOR UPDATE USING (true);
CREATE POLICY contacts_delete ON contacts FOR DELETE USING (true);
CREATE POLICY contacts_service ON contacts USING (true);
CREATE POLICY call_logs_select ON call_logs FOR SELECT USING (true);
CREATE POLICY call_logs_insert ON call_logs FOR INSERT WITH CHECK (true);
CREATE POLICY call_logs_service ON call_logs USING (true);
CREATE POLICY knowledge_base_chunks_select ON knowledge_base_chunks FOR SELECT USING (true);
CREATE POLICY knowledge_base_chunks_service ON knowledge_base_chunks USING (true);

-- Statistics as a live database has them, so row counts come from the catalog.
ANALYZE;
