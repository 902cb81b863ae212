-- A small PIM/shop schema for the quickstart and the tests: products, prices and stock.

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

INSERT INTO products (id, sku, title, description, brand, status, attributes) VALUES
    (1, 'SKU-1', 'Walnut desk', 'Solid walnut, 160 x 80 cm.', 'Oakline', 'approved', '{"color": "walnut", "weight_kg": 38.5}'),
    (2, 'SKU-2', 'Desk lamp', 'LED, dimmable.', 'Lumo', 'approved', '{"color": "black"}'),
    (3, 'SKU-3', 'Office chair', 'Mesh back.', 'Sitwell', 'draft', '{}');
INSERT INTO prices (product_id, currency, amount) VALUES
    (1, 'EUR', 649.00), (1, 'USD', 699.00), (2, 'EUR', 39.90), (3, 'EUR', 189.00);
INSERT INTO stock (product_id, warehouse, qty) VALUES
    (1, 'berlin', 12), (2, 'berlin', 140), (3, 'berlin', 0), (3, 'lyon', 7);
