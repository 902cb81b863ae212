-- A small PIM/shop schema for the quickstart, the examples in config/examples/ and the
-- tests: products, prices, stock, images, orders and content pages.

CREATE TABLE products (
    id          bigint PRIMARY KEY,
    sku         text NOT NULL UNIQUE,
    title       text NOT NULL,
    description text,
    brand       text,
    status      text NOT NULL DEFAULT 'draft',
    attributes  jsonb NOT NULL DEFAULT '{}',
    updated_at  timestamptz NOT NULL DEFAULT now()
);
-- Old values of every column, so rules can see what an update changed (transitions,
-- `changed`, `ignore_changes`, `old.` in conditions).
ALTER TABLE products REPLICA IDENTITY FULL;

CREATE TABLE prices (
    product_id bigint NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    currency   char(3) NOT NULL,
    amount     numeric(12, 2) NOT NULL,
    valid_from date NOT NULL DEFAULT current_date,
    PRIMARY KEY (product_id, currency)
);
-- Old values of every column, so "changed" and old amounts are known.
ALTER TABLE prices REPLICA IDENTITY FULL;

CREATE TABLE stock (
    product_id bigint NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    warehouse  text NOT NULL,
    qty        integer NOT NULL,
    PRIMARY KEY (product_id, warehouse)
);
ALTER TABLE stock REPLICA IDENTITY FULL;

CREATE TABLE images (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    product_id bigint NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    url        text NOT NULL,
    alt        text,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE orders (
    id          bigint PRIMARY KEY,
    customer    text NOT NULL,
    status      text NOT NULL DEFAULT 'new',
    total       numeric(12, 2) NOT NULL,
    currency    char(3) NOT NULL DEFAULT 'EUR',
    ship_to     jsonb NOT NULL DEFAULT '{}',
    updated_at  timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE orders REPLICA IDENTITY FULL;

CREATE TABLE content (
    id           bigint PRIMARY KEY,
    slug         text NOT NULL UNIQUE,
    title        text NOT NULL,
    body         text,
    published    boolean NOT NULL DEFAULT false,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE content REPLICA IDENTITY FULL;

INSERT INTO products (id, sku, title, description, brand, status, attributes) VALUES
    (1, 'SKU-1', 'Walnut desk', 'Solid walnut, 160 x 80 cm.', 'Oakline', 'approved', '{"color": "walnut", "weight_kg": 38.5}'),
    (2, 'SKU-2', 'Desk lamp', 'LED, dimmable.', 'Lumo', 'approved', '{"color": "black"}'),
    (3, 'SKU-3', 'Office chair', 'Mesh back.', 'Sitwell', 'draft', '{}');
INSERT INTO prices (product_id, currency, amount) VALUES
    (1, 'EUR', 649.00), (1, 'USD', 699.00), (2, 'EUR', 39.90), (3, 'EUR', 189.00);
INSERT INTO stock (product_id, warehouse, qty) VALUES
    (1, 'berlin', 12), (2, 'berlin', 140), (3, 'berlin', 0), (3, 'lyon', 7);
INSERT INTO orders (id, customer, status, total, ship_to) VALUES
    (1001, 'ada@example.com', 'paid', 688.90, '{"city": "Berlin", "zip": "10115"}'),
    (1002, 'alan@example.com', 'new', 39.90, '{"city": "Lyon", "zip": "69001"}');
INSERT INTO content (id, slug, title, body, published) VALUES
    (1, 'about-us', 'About us', 'We make furniture.', true),
    (2, 'spring-sale', 'Spring sale', 'Soon.', false);
