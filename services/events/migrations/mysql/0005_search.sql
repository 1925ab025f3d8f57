-- Full-text search over title, city and description: an InnoDB FULLTEXT index, queried in
-- boolean mode ('+word* …'). InnoDB indexes words of at least innodb_ft_min_token_size (3)
-- characters and leaves out its stop words.
CREATE FULLTEXT INDEX events_search ON events (title, city, description);
