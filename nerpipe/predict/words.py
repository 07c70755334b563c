"""Split raw text into words the way CoNLL-2003 is tokenized, keeping each word's character offsets.

    split_words("The U.S. team met Maria's friends in Zürich.")
    -> [(0, 3), (4, 8), (9, 13), (14, 17), (18, 23), (23, 25), (26, 33), (34, 36), (37, 43), (43, 44)]
       The  U.S.  team  met  Maria  's  friends  in  Zürich  .

The rule, tried in this order at each position (whitespace separates words and is never part of one):
  1. abbreviations of single characters with dots: U.S.  e.g.  U.K.  (the final dot stays inside)
  2. English clitics as words of their own, as in CoNLL-2003's Penn Treebank-style tokenization:
     Maria's -> Maria 's;  don't -> do n't;  they're, we'll, I've, I'm, he'd likewise (' or ’)
  3. a CJK ideograph alone: 東京 -> 東 京, as BERT's own pre-tokenizer splits them
  4. a run of word characters, joined through inner hyphens, apostrophes and dots, and commas
     between digits: Jean-Pierre  O'Neill  3.5  1,000  www.reuters.com
  5. any other character alone: , . ( ) " $ % - and every symbol or emoji

"Word characters" are Unicode letters, combining marks, digits and underscore (the `regex`
module's \\w, which unlike `re` keeps "été" written with a combining accent and "हिन्दी" whole),
so offsets are Python string indices: code points, not bytes or UTF-16 units.
"""

import regex

# BERT's _is_chinese_char ranges: CJK Unified Ideographs and their extensions and compatibility blocks.
_CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002a6df\U0002a700-\U0002ceaf\U0002f800-\U0002fa1f"
_CHAR = rf"[^\W{_CJK}]"  # a word character that is not a CJK ideograph
_CLITIC = r"(?i:['’](?:s|re|ve|ll|m|d)|n['’]t)(?!\w)"
_APOSTROPHE_INSIDE = r"['’](?!(?i:s|re|ve|ll|m|d)(?!\w))"  # O'Neill joins; Maria's does not
WORD = regex.compile(rf"""
    (?:{_CHAR}\.){{2,}}(?!\w)                                          # 1. U.S.
  | {_CHAR}+?(?=(?i:n['’]t)(?!\w))                                     # 2. "do" of don't
  | {_CLITIC}                                                         # 2. 's n't 're 've 'll 'm 'd
  | [{_CJK}]                                                          # 3. 東
  | {_CHAR}+(?:(?:[-.]|{_APOSTROPHE_INSIDE}|(?<=\d),(?=\d)){_CHAR}+)*  # 4. Jean-Pierre 1,000
  | \S                                                                # 5. any other character
""", regex.VERBOSE)


def split_words(text):
    """(start, end) character offsets of each word of `text`, in order: text[start:end] is the word."""
    return [m.span() for m in WORD.finditer(text)]
