-- Hold control: a hold's lines are confirmed or released part by part.
--
-- Per line, `quantity` stays what the request reserved; `confirmed` is what was bought and
-- `released` what went back (a partial release, the rest of a partial confirm, a release,
-- an expiry). What is still held is the difference, and never negative.
ALTER TABLE reservation_line
    ADD COLUMN confirmed integer NOT NULL DEFAULT 0 CHECK (confirmed >= 0),
    ADD COLUMN released integer NOT NULL DEFAULT 0 CHECK (released >= 0),
    ADD CONSTRAINT line_units_within_reserved CHECK (confirmed + released <= quantity);
