-- A waiting-list join that was never made, claimed so that it never can be; and entries
-- whose buyer has been told of them by a later join.
--
-- After a fault the service cannot know from the error whether a join committed. As with
-- reserves (003), it settles the question with the entry's primary key, chosen before the
-- join ran: inserting a VOID row with that id waits for any transaction still inserting
-- it, then either finds the entry (it committed) or takes the id for good. VOID rows wait
-- for nothing (not WAITING: outside the queue, its index and `waiting`), hold nothing and
-- are shown to nobody.
ALTER TYPE waitlist_status ADD VALUE 'VOID';

-- A join answered with an existing entry (a retried join) told its buyer of it: a join
-- of the same entry that answered an error may no longer give it back.
ALTER TABLE waitlist_entry ADD COLUMN rejoined boolean NOT NULL DEFAULT false;
